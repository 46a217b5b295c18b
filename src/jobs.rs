//! One scheduled job per database, not per host (`[schedule] once_within`): when the timers of
//! several hosts fire for one shared database, minutes apart or at once, one host backs up (and
//! prunes) and drills; the others say who did, and exit 0.
//!
//! - **A lease** (PostgreSQL): a session advisory lock of the database, one key per kind of job
//!   (`dbconn::lock::BACKUP_JOB_KEY` and the others), taken on a session of its own named
//!   `dbward <job> on <host>` and held for the whole job. A host whose timer fires while another
//!   runs the job waits for it (at most `once_within`, saying who holds it), then looks at the
//!   record: a job that failed there left none, and this host does it. A process that dies lets
//!   the lease go with its session. A SQLite file is one machine's: no lease across hosts.
//! - **The record** (the store, read under the lease): the newest scheduled snapshot of the same
//!   kind (logical or base), or the newest scheduled drill of the same kind in the drill history;
//!   one younger than `once_within`, by any host, means the job is done.
//!
//! Without `once_within` every scheduled run does its job, as before.

use std::time::Duration;

use migrator::DatabaseUrl;

use crate::exit::Exit;
use crate::report::Failure;
use crate::settings::Settings;

/// How many of the newest drills are read to find the newest scheduled one of a kind.
const DRILLS_READ: usize = 20;

#[derive(Debug, Clone, Copy)]
pub enum Job {
    /// `backup --scheduled` (and the retention after it; `--physical`: a base).
    Backup { physical: bool },
    /// `restore-drill --scheduled` of this kind.
    Drill(backup::DrillKind),
    /// `prune`: the backup job's lease, no record.
    Prune,
}

impl Job {
    fn name(self) -> &'static str {
        match self {
            Job::Backup { physical: false } => "scheduled backup",
            Job::Backup { physical: true } => "scheduled base backup",
            Job::Drill(backup::DrillKind::Snapshot) => "scheduled drill",
            Job::Drill(backup::DrillKind::Physical) => "scheduled drill of the base and archive",
            Job::Drill(backup::DrillKind::Stream) => "scheduled drill of the stream",
            Job::Prune => "prune",
        }
    }

    fn key(self) -> i64 {
        use dbconn::lock::*;
        match self {
            Job::Backup { physical: false } | Job::Prune => BACKUP_JOB_KEY,
            Job::Backup { physical: true } => BASE_JOB_KEY,
            Job::Drill(backup::DrillKind::Physical) => PITR_DRILL_JOB_KEY,
            Job::Drill(_) => DRILL_JOB_KEY,
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

/// The lease alone, for a job that runs whatever was done before (`prune`; a base backup
/// `--if-due`, which its own measure decides): never beside another host's run of the same kind.
pub async fn lease_only(settings: &Settings, url: &DatabaseUrl, job: Job) -> Result<Turn, Failure> {
    let lease = match settings.once_within {
        Some(within) => lease(url, job, within).await?,
        None => None,
    };
    Ok(Turn { _lease: lease })
}

async fn lease(
    url: &DatabaseUrl,
    job: Job,
    within: Duration,
) -> Result<Option<dbconn::lock::JobLease>, Failure> {
    let DatabaseUrl::Postgres(pg) = url else {
        return Ok(None);
    };
    let name = format!("dbward {} on {}", job.name(), backup::hostname());
    match dbconn::lock::JobLease::take(pg, job.key(), &name, within).await? {
        Ok(lease) => Ok(Some(lease)),
        Err(holder) => Err(Failure::new(
            Exit::Failed,
            format!(
                "the lease of the {} of {} is still held by {holder} after schedule.once_within ({}), longer than the period it covers: nothing was done here; see that host's log",
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
        Job::Drill(kind) => {
            let drills = backup::drills(&store, &db, DRILLS_READ).await?;
            Ok(drills
                .into_iter()
                .find(|r| r.scheduled && r.kind == kind)
                .filter(|r| backup::manifest::parse_rfc3339(&r.at).is_some_and(|at| at >= since))
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
        Job::Prune => Ok(None),
    }
}
