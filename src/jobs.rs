//! One scheduled job per database, not per host (`[schedule] once_within`): when the timers of
//! several hosts fire for one shared database, minutes apart or at once, one host backs up (and
//! prunes) and drills; the others say who did, and exit 0.
//!
//! - **A lease** (PostgreSQL): a session advisory lock of the database, one key per kind of job
//!   (`dbconn::lock::BACKUP_JOB_KEY`, `DRILL_JOB_KEY`), taken on a session of its own named
//!   `dbward <job> on <host>` and held for the whole job. A host whose timer fires while another
//!   runs the job waits for it (at most `once_within`, saying who holds it), then looks at the
//!   record: a job that failed there left none, and this host does it. A process that dies lets
//!   the lease go with its session. A SQLite file is one machine's: no lease across hosts.
//! - **The record** (the store, read under the lease): the newest scheduled snapshot of the same
//!   kind (logical or base), or the newest scheduled drill of the drill history; one younger than
//!   `once_within`, by any host, means the job is done.
//!
//! Without `once_within` every scheduled run does its job, as before.

use std::time::Duration;

use migrator::DatabaseUrl;

use crate::exit::Exit;
use crate::report::Failure;
use crate::settings::Settings;

#[derive(Debug, Clone, Copy)]
pub enum Job {
    /// `backup --scheduled` (and the retention after it; `--physical`: a base).
    Backup { physical: bool },
    /// `restore-drill --scheduled`.
    Drill,
}

impl Job {
    fn name(self) -> &'static str {
        match self {
            Job::Backup { physical: false } => "scheduled backup",
            Job::Backup { physical: true } => "scheduled base backup",
            Job::Drill => "scheduled drill",
        }
    }
}

/// This host's turn at a job: the lease, held until dropped.
pub struct Turn {
    _lease: Option<dbconn::lock::JobLease>,
}

/// Whether this host runs the job.
pub enum Decision {
    Run(Turn),
    /// Another host did it within `once_within`: what to say.
    Done(String),
}

/// `prune`'s turn: the backup job's lease (never beside another host's backup and its
/// retention), no record.
pub async fn prune_turn(settings: &Settings, url: &DatabaseUrl) -> Result<Turn, Failure> {
    let lease = match settings.once_within {
        Some(within) => lease(url, Job::Backup { physical: false }, within).await?,
        None => None,
    };
    Ok(Turn { _lease: lease })
}

/// Takes this host's turn at `job` on `url`, or finds it done.
pub async fn turn(settings: &Settings, url: &DatabaseUrl, job: Job) -> Result<Decision, Failure> {
    let Some(within) = settings.once_within else {
        return Ok(Decision::Run(Turn { _lease: None }));
    };
    let lease = lease(url, job, within).await?;
    if let Some(done) = done(settings, url, job, within).await? {
        return Ok(Decision::Done(done));
    }
    Ok(Decision::Run(Turn { _lease: lease }))
}

async fn lease(
    url: &DatabaseUrl,
    job: Job,
    within: Duration,
) -> Result<Option<dbconn::lock::JobLease>, Failure> {
    let DatabaseUrl::Postgres(pg) = url else {
        return Ok(None);
    };
    let key = match job {
        Job::Drill => dbconn::lock::DRILL_JOB_KEY,
        Job::Backup { .. } => dbconn::lock::BACKUP_JOB_KEY,
    };
    let name = format!("dbward {} on {}", job.name(), backup::hostname());
    match dbconn::lock::JobLease::take(pg, key, &name, within).await? {
        Ok(lease) => Ok(Some(lease)),
        Err(holder) => Err(Failure::new(
            Exit::Failed,
            format!(
                "the {} of {} is still held by {holder} after schedule.once_within ({}): it has run longer than the period it covers. Nothing was done here; see that host's log",
                job.name(),
                url.display(),
                migrator::error::humanize(within)
            ),
        )),
    }
}

/// What says the job was done within `within`, by any host.
async fn done(
    settings: &Settings,
    url: &DatabaseUrl,
    job: Job,
    within: Duration,
) -> Result<Option<String>, Failure> {
    let since = time::OffsetDateTime::now_utc() - within;
    let store = settings.store().await?;
    let db = url.name();
    let said = |host: &str, at: &str, what: String| {
        format!(
            "the {} of {} was done by host {host} at {at} ({what}), within schedule.once_within ({}): nothing to do here",
            job.name(),
            url.display(),
            migrator::error::humanize(within)
        )
    };
    match job {
        Job::Backup { physical } => {
            let accept = |m: backup::Manifest| {
                Ok(
                    (m.kind == backup::Kind::Scheduled && m.physical.is_some() == physical)
                        .then_some(m),
                )
            };
            let newest = backup::catalog::newest(&store, &db, &accept).await?;
            Ok(newest
                .filter(|m| m.created().is_some_and(|c| c >= since))
                .map(|m| said(&m.host, &m.created_at, format!("snapshot {}", m.id))))
        }
        Job::Drill => {
            let newest = backup::newest_drill(&store, &db).await?;
            Ok(newest
                .filter(|r| {
                    r.scheduled
                        && time::OffsetDateTime::parse(
                            &r.at,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .is_ok_and(|at| at >= since)
                })
                .map(|r| {
                    let verdict = match (&r.success, &r.failed_check) {
                        (true, _) => "passed".to_string(),
                        (false, Some(c)) => format!("failed: {c}"),
                        (false, None) => "failed".to_string(),
                    };
                    said(
                        &r.host,
                        &r.at,
                        format!("snapshot {}, {verdict}", r.snapshot),
                    )
                }))
        }
    }
}
