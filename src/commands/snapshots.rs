//! `dbward snapshots`: this database's snapshots, newest first, from their manifests.

use serde_json::json;
use time::OffsetDateTime;

use super::{database_url, table};
use crate::cli::SnapshotsArgs;
use crate::exit::Exit;
use crate::report::{Failure, Report};
use crate::settings::Settings;

pub async fn run(settings: &Settings, args: &SnapshotsArgs) -> Result<Report, Failure> {
    let url = database_url(settings)?;
    let stores = settings.stores().await?;
    let store = stores.primary();
    let db = url.name();
    let Gathered {
        mut all,
        damaged,
        copies,
        unreachable,
    } = gather(settings, &stores, &db, args.limit).await?;
    all.sort_by(|a, b| (b.created(), &b.id).cmp(&(a.created(), &a.id)));
    if let Some(n) = args.limit {
        all.truncate(n);
    }
    // When each shown snapshot was last proven restorable (or failed to be).
    let drills = match args.limit {
        Some(_) => {
            let ids: Vec<String> = all.iter().map(|m| m.id.clone()).collect();
            backup::catalog::receipts_of(store, &url.name(), &ids).await?
        }
        None => backup::receipts(store, &url.name()).await?,
    };
    let now = OffsetDateTime::now_utc();
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|m| row(m, drills.get(&m.id), copies.get(&m.id), now))
        .collect();
    let mut text = table(
        &[
            "ID", "KIND", "TYPE", "AGE", "RAW", "STORED", "RATIO", "HEAD", "DRILLED", "COPIES",
        ],
        &rows,
    );
    for d in &damaged {
        text.push_str(&format!(
            "DAMAGED {}: {} (skipped; nothing reads it as a snapshot)\n",
            store.describe(&d.key),
            d.problem
        ));
    }
    for u in &unreachable {
        text.push_str(&format!("UNREACHABLE {u}\n"));
    }
    text.push_str(&format!(
        "{} snapshot(s) of {} in {}\n",
        all.len(),
        url.name(),
        settings.store
    ));
    // PostgreSQL: the WAL archive's state, when the store holds one.
    let archive = match &url {
        migrator::DatabaseUrl::Postgres(_) => match backup::pitr::wal::verify(store, &db).await {
            Ok(v) => Some(v),
            Err(backup::Error::Refused(_)) => None, // no archive here
            Err(e) => {
                tracing::warn!("the WAL archive: {}", backup::error::chain(&e));
                None
            }
        },
        migrator::DatabaseUrl::Sqlite(_) => None,
    };
    if let Some(v) = &archive {
        let gaps: u64 = v.gaps.iter().map(|g| g.missing).sum();
        text.push_str(&format!(
            "WAL archive: {} segment(s){}{}\n",
            v.timelines.iter().map(|t| t.segments).sum::<u64>(),
            match (&v.newest, v.lag_seconds) {
                (Some(n), Some(lag)) => format!(", newest {n} stored {lag:.0}s ago"),
                _ => String::new(),
            },
            if gaps > 0 {
                format!(", {gaps} MISSING (see `dbward pitr verify`)")
            } else {
                ", no gap".into()
            }
        ));
    }
    Ok(Report {
        text,
        json: json!({ "database": url.name(), "store": settings.store, "mirrors": settings.store_mirrors, "snapshots": all, "copies": copies, "unreachable": unreachable, "damaged": damaged, "drills": drills, "wal_archive": archive }),
        code: Exit::Success,
    })
}

/// The snapshots of every store: the primary's, then each mirror's that the primary lacks.
struct Gathered {
    all: Vec<backup::Manifest>,
    damaged: Vec<backup::Damaged>,
    /// Where each snapshot has a copy: `primary`, `mirror 1`, ...
    copies: std::collections::BTreeMap<String, Vec<String>>,
    /// The mirrors that could not be listed, and why.
    unreachable: Vec<String>,
}

async fn gather(
    settings: &Settings,
    stores: &backup::StoreSet,
    db: &str,
    limit: Option<usize>,
) -> Result<Gathered, Failure> {
    let backup::Listing {
        snapshots: mut all,
        damaged,
    } = listing(stores.primary(), db, limit).await?;
    let mut copies: std::collections::BTreeMap<String, Vec<String>> = all
        .iter()
        .map(|m| (m.id.clone(), vec!["primary".to_string()]))
        .collect();
    let mut unreachable = Vec::new();
    for (n, mirror) in stores.mirrors() {
        match listing(mirror, db, limit).await {
            Ok(list) => {
                for d in &list.damaged {
                    tracing::warn!("skipping {}: {}", mirror.describe(&d.key), d.problem);
                }
                for m in list.snapshots {
                    let at = copies.entry(m.id.clone()).or_default();
                    if at.is_empty() {
                        all.push(m);
                    }
                    at.push(format!("mirror {n}"));
                }
            }
            Err(e) => {
                let e = backup::error::chain(&e);
                tracing::warn!("mirror {n}: {e}");
                unreachable.push(format!(
                    "mirror {n} ({}): {e}",
                    settings.store_mirrors[n - 1]
                ));
            }
        }
    }
    Ok(Gathered {
        all,
        damaged,
        copies,
        unreachable,
    })
}

/// One snapshot's row of the table.
fn row(
    m: &backup::Manifest,
    drill: Option<&backup::DrillReceipt>,
    copies: Option<&Vec<String>>,
    now: OffsetDateTime,
) -> Vec<String> {
    let age = m
        .created()
        .map(|t| age_of(now - t))
        .unwrap_or_else(|| "?".into());
    let head = m
        .migration_head
        .as_ref()
        .map(|h| h.label())
        .unwrap_or_else(|| "-".into());
    // When this snapshot was last proven restorable (or failed to be).
    let drilled = match drill {
        Some(r) => {
            let when = OffsetDateTime::parse(&r.at, &time::format_description::well_known::Rfc3339)
                .map(|t| age_of(now - t) + " ago")
                .unwrap_or_else(|_| r.at.clone());
            if r.success {
                format!("ok {when}")
            } else {
                format!("FAILED {when}")
            }
        }
        None => "never".into(),
    };
    vec![
        m.id.clone(),
        m.kind.as_str().into(),
        match m.format {
            backup::manifest::Format::Sqlite => "file",
            backup::manifest::Format::Pgdump => "dump",
            backup::manifest::Format::Pgbase => "base",
            backup::manifest::Format::Pgpoint => "point",
            backup::manifest::Format::Streampoint => "stream",
        }
        .into(),
        age,
        backup::bytes(m.raw_bytes),
        backup::bytes(m.stored_bytes),
        if m.data_key.is_empty() {
            "-".into() // a restore point or a stream position stores no data of its own
        } else {
            format!("{:.1}x", m.raw_bytes as f64 / m.stored_bytes.max(1) as f64)
        },
        head,
        drilled,
        copies.map(|c| c.join(", ")).unwrap_or_default(),
    ]
}

/// A store's snapshots of `db`: all of them, or with `--limit N` its newest N (the newest N
/// overall are among each store's newest N), read without reading the rest.
async fn listing(
    store: &backup::Store,
    db: &str,
    limit: Option<usize>,
) -> Result<backup::Listing, backup::Error> {
    match limit {
        Some(n) => backup::catalog::list_newest(store, db, n).await,
        None => backup::list_all(store, db).await,
    }
}

pub(super) fn age_of(d: time::Duration) -> String {
    let s = d.whole_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}
