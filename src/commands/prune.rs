//! `dbward prune`: retention over this database's snapshots, plus orphaned data objects.

use serde_json::json;

use super::{database_url, table};
use crate::cli::PruneArgs;
use crate::report::{Failure, Report, EXIT_USAGE};
use crate::settings::Settings;

pub async fn run(settings: &Settings, args: &PruneArgs) -> Result<Report, Failure> {
    if settings.retention.is_empty() {
        return Err(Failure::new(
            EXIT_USAGE,
            "no retention policy: set keep_last, keep_daily, keep_weekly or keep_monthly under [retention] in the config file (prune never deletes by default)",
        ));
    }
    let url = database_url(settings)?;
    let store = settings.store().await?;
    let live = backup::owner::live_identity(&url).await?;
    let report = backup::prune(
        &store,
        &url.name(),
        &settings.retention,
        args.dry_run,
        &live,
        backup::owner::format_of(&url),
    )
    .await?;
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
    text.push_str(&format!(
        "{} kept, {} {}{}\n",
        report.decisions.len() - report.removed.len(),
        report.removed.len(),
        if args.dry_run { "to remove" } else { "removed" },
        if args.dry_run { " (dry run)" } else { "" }
    ));
    Ok(Report {
        text,
        json: json!(report),
        code: 0,
    })
}
