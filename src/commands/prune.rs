//! `dbward prune`: retention over this database's snapshots, plus orphaned data objects.

use serde_json::json;

use super::{database_url, table};
use crate::cli::PruneArgs;
use crate::exit::Exit;
use crate::report::{Failure, Report};
use crate::settings::Settings;

pub async fn run(settings: &Settings, args: &PruneArgs) -> Result<Report, Failure> {
    if settings.retention.is_empty() && settings.stream_window.is_none() {
        return Err(Failure::new(
            Exit::Usage,
            "no retention policy: set keep_last, keep_daily, keep_weekly or keep_monthly (snapshots) or stream_window (a SQLite stream) under [retention] in the config file (prune never deletes by default)",
        ));
    }
    let url = database_url(settings)?;
    // With schedule.once_within, under the backup job's lease: never beside another host's
    // backup and its retention.
    let _turn = crate::jobs::lease_only(settings, &url, crate::jobs::Job::Prune).await?;
    let streams = stream_retention(settings, &url, args.dry_run).await?;
    if settings.retention.is_empty() {
        return Ok(Report {
            text: streams.0,
            json: json!({ "stream_generations_removed": streams.1 }),
            code: Exit::Success,
        });
    }
    let stores = settings.stores().await?;
    let live = backup::owner::live_identity(&url).await?;
    // Every mirror by the same policy, over its own listing.
    let db = url.name();
    let formats = backup::owner::formats_of(&url);
    let (report, in_mirrors) = stores
        .each(|store| {
            backup::prune(
                store,
                &db,
                &settings.retention,
                args.dry_run,
                &live,
                formats,
            )
        })
        .await?;
    let mut mirrors = Vec::new();
    for backup::InMirror { mirror, result } in in_mirrors {
        match result {
            Ok(r) => mirrors
                .push(json!({ "mirror": mirror, "removed": r.removed, "orphans": r.orphans })),
            Err(e) => {
                let e = backup::error::chain(&e);
                tracing::warn!("retention in mirror {mirror}: {e}");
                mirrors.push(json!({ "mirror": mirror, "error": e }));
            }
        }
    }
    let rows: Vec<Vec<String>> = report
        .decisions
        .iter()
        .map(|d| {
            let verdict = match (d.keep, args.dry_run) {
                (true, _) => "keep",
                (false, true) => "would remove",
                (false, false) => "removed",
            };
            vec![d.id.clone(), verdict.into(), d.reasons.join(",")]
        })
        .collect();
    let mut text = table(&["ID", "ACTION", "KEPT BY"], &rows);
    for o in &report.orphans {
        text.push_str(&format!(
            "orphan {}: {}\n",
            if args.dry_run {
                "would be removed"
            } else {
                "removed"
            },
            o
        ));
    }
    if !report.wal_removed.is_empty() {
        text.push_str(&format!(
            "WAL: {} files before {} {} (no kept base needs them)\n",
            report.wal_removed.len(),
            report.wal_removed.last().expect("not empty"),
            if args.dry_run {
                "would be removed"
            } else {
                "removed"
            }
        ));
    }
    text.push_str(&format!(
        "{} kept, {} {}{}\n",
        report.decisions.len() - report.removed.len(),
        report.removed.len(),
        if args.dry_run { "to remove" } else { "removed" },
        if args.dry_run { " (dry run)" } else { "" }
    ));
    for m in &mirrors {
        match m["error"].as_str() {
            Some(e) => text.push_str(&format!("mirror {}: {e}\n", m["mirror"])),
            None => text.push_str(&format!(
                "mirror {}: {} {}\n",
                m["mirror"],
                m["removed"].as_array().map_or(0, Vec::len),
                if args.dry_run { "to remove" } else { "removed" }
            )),
        }
    }
    text.push_str(&streams.0);
    let mut json = json!(report);
    json["mirrors"] = json!(mirrors);
    json["stream_generations_removed"] = json!(streams.1);
    Ok(Report {
        text,
        json,
        code: Exit::Success,
    })
}

/// `retention.stream_window` over a SQLite database's stream, in every store: what it says, and
/// the generations removed (or to remove) from the primary.
async fn stream_retention(
    settings: &Settings,
    url: &migrator::DatabaseUrl,
    dry_run: bool,
) -> Result<(String, Vec<String>), Failure> {
    let (Some(window), migrator::DatabaseUrl::Sqlite(_)) = (settings.stream_window, url) else {
        return Ok((String::new(), Vec::new()));
    };
    let stores = settings.stores().await?;
    let id = crate::service::stream::whose(url, stores.primary()).await?;
    let db = url.name();
    let (removed, mirrors) = stores
        .each(|store| backup::stream::prune::prune(store, &db, id.as_deref(), window, dry_run))
        .await?;
    for m in mirrors {
        if let Err(e) = m.result {
            tracing::warn!(
                "stream retention in mirror {}: {}",
                m.mirror,
                backup::error::chain(&e)
            );
        }
    }
    let text = format!(
        "stream: {} generation(s) older than retention.stream_window = {} {}\n",
        removed.len(),
        humantime::format_duration(window),
        if dry_run { "to remove" } else { "removed" }
    );
    Ok((text, removed))
}
