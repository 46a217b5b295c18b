//! `dbward backup`: one snapshot of kind `manual`. Also the snapshot step `migrate` uses.

use serde_json::json;

use super::database_url;
use crate::cli::BackupArgs;
use crate::exit::Exit;
use crate::report::{Failure, Report};
use crate::settings::Settings;

pub async fn run(settings: &Settings, args: &BackupArgs) -> Result<Report, Failure> {
    let url = database_url(settings)?;
    if args.physical && matches!(url, migrator::DatabaseUrl::Sqlite(_)) {
        return Err(Failure::new(
            Exit::Usage,
            "--physical takes a PostgreSQL cluster's base backup; a SQLite snapshot already is a copy of the database file",
        ));
    }
    if let migrator::DatabaseUrl::Sqlite(path) = &url {
        // Said once, before anything else is tried (the database's identity, a staging copy).
        if std::fs::symlink_metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        {
            let cwd = std::env::current_dir().map(|d| d.display().to_string());
            return Err(Failure::new(
                Exit::Failed,
                format!(
                    "{}: the database file does not exist, so there is nothing to back up. Check `database.url`{}; a new database is created by `dbward migrate`",
                    url.display(),
                    match (path.is_relative(), cwd) {
                        (true, Ok(d)) => format!(" (a relative path is read from the working directory, here {d})"),
                        _ => String::new(),
                    }
                ),
            ));
        }
    }
    let job = crate::jobs::Job::Backup {
        physical: args.physical,
    };
    // Whether a base is due is its own measure (the WAL since the newest base), whoever took
    // the last one: taken under the lease only, so two hosts never both find it due.
    let _due_lease = if args.scheduled && args.if_due {
        Some(crate::jobs::lease_only(settings, &url, job).await?)
    } else {
        None
    };
    if args.if_due {
        let Some(max) = settings.pitr.base_max_wal else {
            return Err(Failure::new(
                Exit::Usage,
                "--if-due needs pitr.base_max_wal (the WAL since the newest base that makes a base due)",
            ));
        };
        let store = settings.store().await?;
        let bases = backup::pitr::cluster::bases(&store, &url.name()).await?;
        let since = backup::pitr::cluster::wal_since_base(&store, &url.name(), &bases).await?;
        if let (Some(newest), Some(since)) = (bases.first(), since) {
            let bytes = since.bytes;
            // After a promotion or a rewind, a base of the new timeline is due at once.
            if bytes <= max && since.later_timeline.is_none() {
                return Ok(Report {
                    text: format!(
                        "no base due: {} of WAL since base {} (pitr.base_max_wal {})\n",
                        backup::bytes(bytes),
                        newest.id,
                        backup::bytes(max)
                    ),
                    json: json!({ "snapshot": null, "due": false, "wal_since_base_bytes": bytes, "base": newest.id }),
                    code: Exit::Success,
                });
            }
        }
    }
    // One scheduled backup per database across hosts: this host's turn (held to the end,
    // retention included), or the record of another's.
    let _turn = if args.scheduled && !args.if_due {
        match crate::jobs::turn(settings, &url, job).await? {
            crate::jobs::Decision::Run(turn) => Some(turn),
            crate::jobs::Decision::Done(said) => {
                tracing::info!("{said}");
                return Ok(Report {
                    text: format!("{said}\n"),
                    json: json!({ "snapshot": null, "done": said }),
                    code: Exit::Success,
                });
            }
        }
    } else {
        None
    };
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
