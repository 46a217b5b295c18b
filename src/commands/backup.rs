//! `dbward backup`: one snapshot of kind `manual`. Also the snapshot step `migrate` uses.

use serde_json::json;

use super::database_url;
use crate::cli::BackupArgs;
use crate::report::{Exit, Failure, Report};
use crate::settings::Settings;

pub async fn run(settings: &Settings, args: &BackupArgs) -> Result<Report, Failure> {
    let url = database_url(settings)?;
    if args.physical && matches!(url, migrator::DatabaseUrl::Sqlite(_)) {
        return Err(Failure::new(
            Exit::Usage,
            "--physical takes a PostgreSQL cluster's base backup; a SQLite snapshot already is a copy of the database file",
        ));
    }
    let kind = if args.scheduled {
        backup::Kind::Scheduled
    } else {
        backup::Kind::Manual
    };
    let m =
        crate::service::take::take(settings, &url, kind, args.label.clone(), args.physical).await?;
    // Then retention, when a policy is set; a new snapshot is the newest, so it is always kept.
    let pruned = crate::service::take::retain(settings, &url, &m).await?;
    Ok(Report {
        text: format!("{}\n", m.id),
        json: json!({ "snapshot": m, "pruned": pruned }),
        code: Exit::Success,
    })
}
