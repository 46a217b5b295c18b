//! `dbward report`: the state of every database a store holds, read from the store alone (no
//! database is opened): the newest backup and its age, stored sizes over time, the drills'
//! verdicts and times to restore, the WAL archive's or the SQLite stream's newest activity, and
//! the deploys with who and why. As text, `--json`, a self-contained HTML page (`--html FILE`,
//! [`html`]) and Prometheus timestamp gauges (`--metrics FILE`).

mod html;

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::json;

use crate::cli::ReportArgs;
use crate::exit::Exit;
use crate::report::{Failure, Report};
use crate::settings::Settings;

/// How many of the newest snapshots, drills and deploys a database's part shows.
const SNAPSHOTS: usize = 60;
const DRILLS: usize = 30;
const DEPLOYS: usize = 20;

#[derive(Debug, Serialize)]
pub struct Overview {
    /// RFC 3339, UTC: when the report was made.
    pub at: String,
    pub databases: Vec<Database>,
}

#[derive(Debug, Serialize)]
pub struct Database {
    pub name: String,
    /// The store, as shown (no credentials).
    pub store: String,
    /// The newest snapshot that is a copy (not a position), and its age in seconds.
    pub last_backup: Option<Snapshot>,
    pub last_backup_age_seconds: Option<i64>,
    /// The newest snapshots, newest first.
    pub snapshots: Vec<Snapshot>,
    /// Manifests that could not be read (each a problem to look at).
    pub damaged: usize,
    /// The newest drills, newest first.
    pub drills: Vec<backup::DrillRecord>,
    /// The newest deploys, newest first.
    pub deploys: Vec<Deploy>,
    /// PostgreSQL: when the newest object of the WAL archive was stored.
    pub wal_last_archived: Option<String>,
    /// SQLite: when the newest stream generation's replicator last said it was there.
    pub stream_last_seen: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub id: String,
    pub kind: String,
    pub created_at: String,
    pub host: String,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Deploy {
    pub at: String,
    pub event: String,
    pub applied: Vec<i64>,
    pub by: String,
    pub release: Option<String>,
    pub reason: Option<String>,
    pub outcome: String,
}

pub async fn run(all: &[Settings], args: &ReportArgs) -> Result<Report, Failure> {
    let mut stores: Vec<&Settings> = Vec::new();
    for s in all {
        if !stores.iter().any(|o| o.store == s.store) {
            stores.push(s);
        }
    }
    let now = time::OffsetDateTime::now_utc();
    let mut databases = Vec::new();
    for settings in stores {
        let store = settings.store().await?;
        for name in store.folders().await? {
            if backup::check_folder_name(&name).is_err() {
                continue;
            }
            if let Some(db) = database(&store, &name, now).await? {
                databases.push(db);
            }
        }
    }
    let overview = Overview {
        at: backup::manifest::now_rfc3339(now),
        databases,
    };
    if let Some(path) = &args.html {
        backup::scratch::write_atomic(path, html::page(&overview).as_bytes(), 0o644)
            .map_err(|e| Failure::new(Exit::Failed, format!("--html {}: {e}", path.display())))?;
    }
    if let Some(path) = &args.metrics {
        backup::scratch::write_atomic(path, gauges(&overview).as_bytes(), 0o644).map_err(|e| {
            Failure::new(Exit::Failed, format!("--metrics {}: {e}", path.display()))
        })?;
    }
    Ok(Report {
        text: text(&overview),
        json: json!(overview),
        code: Exit::Success,
    })
}

/// One folder of the store, if it is a database's (it holds snapshots, drills or deploys).
async fn database(
    store: &backup::Store,
    name: &str,
    now: time::OffsetDateTime,
) -> Result<Option<Database>, Failure> {
    let listing = backup::catalog::list_newest(store, name, SNAPSHOTS).await?;
    let snapshots: Vec<Snapshot> = listing
        .snapshots
        .iter()
        .filter(|m| !m.data_key.is_empty())
        .take(SNAPSHOTS)
        .map(|m| Snapshot {
            id: m.id.clone(),
            kind: m.kind.as_str().to_string(),
            created_at: m.created_at.clone(),
            host: m.host.clone(),
            raw_bytes: m.raw_bytes,
            stored_bytes: m.stored_bytes,
        })
        .collect();
    let drills = backup::catalog::newest_records::<backup::DrillRecord>(
        store,
        &format!("{name}/drills"),
        DRILLS,
    )
    .await?;
    let deploys: Vec<Deploy> = backup::catalog::newest_records::<crate::deploys::Entry>(
        store,
        &format!("{name}/deploys"),
        DEPLOYS,
    )
    .await?
    .into_iter()
    .map(|e| Deploy {
        at: e.at,
        event: e.event,
        applied: e.applied,
        by: format!("{}@{}", e.user, e.host),
        release: e.release,
        reason: e.reason,
        outcome: e.outcome,
    })
    .collect();
    let wal_last_archived = newest_modified(store, &format!("{name}/wal"), None).await?;
    let stream_last_seen = stream_last_seen(store, name).await?;
    if listing.snapshots.is_empty()
        && listing.damaged.is_empty()
        && drills.is_empty()
        && deploys.is_empty()
        && wal_last_archived.is_none()
        && stream_last_seen.is_none()
    {
        return Ok(None);
    }
    let last_backup = snapshots.first().cloned();
    let last_backup_age_seconds = last_backup.as_ref().and_then(|s| {
        backup::manifest::parse_rfc3339(&s.created_at).map(|t| (now - t).whole_seconds())
    });
    Ok(Some(Database {
        name: name.to_string(),
        store: store.describe(name),
        last_backup,
        last_backup_age_seconds,
        snapshots,
        damaged: listing.damaged.len(),
        drills,
        deploys,
        wal_last_archived,
        stream_last_seen,
    }))
}

/// When the newest object under `dir` (after `after`) was stored, RFC 3339.
async fn newest_modified(
    store: &backup::Store,
    dir: &str,
    after: Option<&str>,
) -> Result<Option<String>, Failure> {
    let newest = store
        .list_after(dir, after)
        .await?
        .into_iter()
        .filter_map(|o| o.modified)
        .max();
    Ok(newest.map(|t| backup::manifest::now_rfc3339(time::OffsetDateTime::from(t))))
}

/// When the replicator of the newest stream generation last renewed its `holder.json` (every
/// minute while it runs): one listing of the generations' records, one of a single key.
async fn stream_last_seen(store: &backup::Store, name: &str) -> Result<Option<String>, Failure> {
    let dir = format!("{name}/stream");
    let generations: BTreeSet<String> = store
        .list(&dir)
        .await?
        .into_iter()
        .filter_map(|o| {
            let file = o.key.rsplit('/').next()?.to_string();
            file.strip_suffix(".json").map(str::to_string)
        })
        .collect();
    let Some(newest) = generations.last() else {
        return Ok(None);
    };
    // Every other key of a generation (the base, steps named by hex digits) sorts before it.
    newest_modified(store, &format!("{dir}/{newest}"), Some("holder.jso")).await
}

fn age(seconds: i64) -> String {
    super::snapshots::age_of(time::Duration::seconds(seconds))
}

/// One line per database.
fn text(o: &Overview) -> String {
    let rows: Vec<Vec<String>> = o
        .databases
        .iter()
        .map(|d| {
            let drill = d.drills.first();
            vec![
                d.name.clone(),
                d.last_backup
                    .as_ref()
                    .map(|s| s.id.clone())
                    .unwrap_or_else(|| "none".into()),
                d.last_backup_age_seconds.map(age).unwrap_or_default(),
                drill
                    .map(|r| format!("{} {}", if r.success { "passed" } else { "FAILED" }, r.at))
                    .unwrap_or_else(|| "never drilled".into()),
                drill
                    .and_then(|r| r.rto_seconds)
                    .map(|s| format!("{s:.1}s"))
                    .unwrap_or_default(),
                d.deploys.len().to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no database in the store\n".into();
    }
    super::table(
        &[
            "DATABASE",
            "LAST BACKUP",
            "AGE",
            "LAST DRILL",
            "RTO",
            "DEPLOYS",
        ],
        &rows,
    )
}

/// Prometheus textfile gauges, one series per database: timestamps, which alert rules turn
/// into ages (`time() - dbward_last_backup_timestamp_seconds > 26 * 3600`).
fn gauges(o: &Overview) -> String {
    let ts = |at: &str| backup::manifest::parse_rfc3339(at).map(|t| t.unix_timestamp().to_string());
    type Value<'a> = Box<dyn Fn(&Database) -> Option<String> + 'a>;
    let metrics: [(&str, &str, Value); 6] = [
        (
            "dbward_last_backup_timestamp_seconds",
            "When the newest snapshot in the store was taken (Unix time).",
            Box::new(|d| d.last_backup.as_ref().and_then(|s| ts(&s.created_at))),
        ),
        (
            "dbward_last_backup_stored_bytes",
            "The newest snapshot's size in the store.",
            Box::new(|d| d.last_backup.as_ref().map(|s| s.stored_bytes.to_string())),
        ),
        (
            "dbward_last_drill_timestamp_seconds",
            "When the newest restore drill in the store's drill history ended (Unix time).",
            Box::new(|d| d.drills.first().and_then(|r| ts(&r.at))),
        ),
        (
            "dbward_last_drill_success",
            "1 if the newest restore drill passed, else 0.",
            Box::new(|d| d.drills.first().map(|r| (r.success as u8).to_string())),
        ),
        (
            "dbward_wal_last_archived_timestamp_seconds",
            "When the newest object of the WAL archive was stored (Unix time).",
            Box::new(|d| d.wal_last_archived.as_deref().and_then(ts)),
        ),
        (
            "dbward_stream_last_seen_timestamp_seconds",
            "When the SQLite stream's replicator last renewed its lease in the store (Unix time).",
            Box::new(|d| d.stream_last_seen.as_deref().and_then(ts)),
        ),
    ];
    let mut out = String::new();
    for (name, help, value) in &metrics {
        let lines: Vec<String> = o
            .databases
            .iter()
            .filter_map(|d| {
                let v = value(d)?;
                let label = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
                // The store too: two stores may each hold a database of one name.
                Some(format!(
                    "{name}{{database=\"{}\",store=\"{}\"}} {v}\n",
                    label(&d.name),
                    label(&d.store)
                ))
            })
            .collect();
        if !lines.is_empty() {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
            out.extend(lines);
        }
    }
    out
}
