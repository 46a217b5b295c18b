//! `dbward backup`: one snapshot of kind `manual`. Also the snapshot step `migrate` uses.

use serde_json::json;

use migrator::DatabaseUrl;

use super::database_url;
use crate::cli::BackupArgs;
use crate::report::{Failure, Report};
use crate::settings::Settings;

pub async fn run(settings: &Settings, args: &BackupArgs) -> Result<Report, Failure> {
    let url = database_url(settings)?;
    let kind = if args.scheduled {
        backup::Kind::Scheduled
    } else {
        backup::Kind::Manual
    };
    let m = snapshot(settings, &url, kind, args.label.clone()).await?;
    // Then retention, when a policy is set; a new snapshot is the newest, so it is always kept.
    let pruned = if settings.retention.is_empty() {
        None
    } else {
        let store = settings.store().await?;
        Some(
            backup::prune(
                &store,
                &url.name(),
                &settings.retention,
                false,
                &backup::owner::Live::Present(m.database_id.clone()),
                m.format,
            )
            .await?,
        )
    };
    Ok(Report {
        text: format!("{}\n", m.id),
        json: json!({ "snapshot": m, "pruned": pruned.map(|p| p.removed) }),
        code: 0,
    })
}

/// Takes one snapshot with the settings' store, temp dir and lock timeout.
pub async fn snapshot(
    settings: &Settings,
    url: &DatabaseUrl,
    kind: backup::Kind,
    label: Option<String>,
) -> Result<backup::Manifest, Failure> {
    let store = settings.store().await?;
    let temp_dir = settings.temp_dir();
    let bar = progress_bar();
    let req = backup::Request {
        database: url,
        kind,
        label,
        level: settings.level,
        temp_dir: &temp_dir,
        lock_timeout: settings.lock_timeout,
        progress: bar.clone().map(|bar| -> backup::Progress {
            std::sync::Arc::new(move |done, total| {
                bar.set_length(total.max(done));
                bar.set_position(done);
            })
        }),
    };
    let result = backup::take(&store, &req).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(result?)
}

/// A byte progress bar on stderr when it is a terminal (never in the journal or a pipe).
fn progress_bar() -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar =
        indicatif::ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::stderr());
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} snapshot {bytes}/{total_bytes} {bytes_per_sec} {wide_bar} {eta}",
    )
    .expect("a valid template");
    bar.set_style(style);
    Some(bar)
}
