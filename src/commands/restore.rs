//! `dbward restore SNAPSHOT|latest|pre-deploy`: fetch and verify, restore beside the live
//! database, check, then swap it in; the replaced database is kept. Also the restore step of
//! the health guard.

use std::io::{BufRead, IsTerminal, Write};

use serde_json::json;

use super::database_url;
use crate::cli::RestoreArgs;
use crate::exit::Exit;
use crate::report::{Failure, Report};
use crate::service::restore::{restore_if_missing, restore_snapshot, Options};
use crate::service::select::resolve;
use crate::settings::Settings;

pub async fn run(settings: &Settings, args: &RestoreArgs) -> Result<Report, Failure> {
    let url = database_url(settings)?;
    if args.time.is_some() && !args.physical && !args.stream {
        return Err(Failure::new(
            Exit::Usage,
            "--time goes with --physical (PostgreSQL) or --stream (SQLite)",
        ));
    }
    if args.physical {
        return physical(settings, &url, args).await;
    }
    if args.stream {
        return stream(settings, &url, args).await;
    }
    let snapshot = args.snapshot.as_deref().unwrap_or("latest");
    if args.if_missing {
        if snapshot != "latest" || args.to.is_some() {
            return Err(Failure::new(
                Exit::Usage,
                "--if-missing restores `latest` into the database itself (no --to)",
            ));
        }
        let outcome = restore_if_missing(settings, &url).await?;
        return Ok(Report {
            text: format!("{}\n", outcome.message(&url)),
            json: outcome.json(),
            code: Exit::Success,
        });
    }
    let stores = settings.stores().await?;
    let resolved = resolve(settings, &stores, &url, snapshot).await;
    // SQLite: `latest` is the newest state, the stream's when it is newer than any snapshot.
    if snapshot == "latest" {
        if let Some(at) = crate::service::stream::newest(settings, &url).await? {
            let newer = match &resolved {
                Ok((m, _)) => m.created().is_none_or(|c| c < at),
                Err(_) => true,
            };
            if newer {
                tracing::info!("the stream's newest state (read at {at}) is newer than the newest snapshot: restoring it");
                return stream(settings, &url, args).await;
            }
        }
    }
    let (m, copies) = resolved?;
    let target = args.to.as_deref().unwrap_or("the live database");
    confirm(
        args.yes,
        &format!(
            "Restore snapshot {} ({}, {}) over {} ({target})?",
            m.id,
            m.kind.as_str(),
            m.created_at,
            url.display()
        ),
    )?;
    let opts = Options {
        force: args.force,
        terminate_connections: args.terminate_connections,
        to: args.to.clone(),
    };
    let restored = restore_snapshot(settings, &copies, &url, &m, &opts).await?;
    Ok(Report {
        text: format!(
            "restored {} into {}{}\n",
            m.id,
            restored.outcome.database,
            kept(&restored.outcome)
        ),
        json: serde_json::to_value(&restored).expect("serializes"),
        code: Exit::Success,
    })
}

/// `restore --physical --to DIR`: a point-in-time restore into a new data directory, its
/// server left running. Nothing existing is replaced, so nothing is asked.
async fn physical(
    settings: &Settings,
    url: &migrator::DatabaseUrl,
    args: &RestoreArgs,
) -> Result<Report, Failure> {
    use crate::service::pitr::restore_to;
    use backup::pitr::cluster::Which;
    let usage = |m: String| Failure::new(Exit::Usage, m);
    let which = if let Some(t) = time_of(args)? {
        Which::Time(t)
    } else if let Some(l) = &args.lsn {
        Which::Lsn(
            backup::pitr::base::parse_lsn(l)
                .ok_or_else(|| usage(format!("--lsn {l}: not an LSN (e.g. 0/4000028)")))?,
        )
    } else {
        match args.snapshot.as_deref() {
            Some("latest") | None => Which::Latest,
            // The last deploy's restore point (or base).
            Some("pre-deploy") => {
                Which::Base(crate::service::select::pre_deploy_id(settings, url).await?)
            }
            Some(id) => Which::Base(id.to_string()),
        }
    };
    if args.if_missing || args.force || args.terminate_connections {
        return Err(usage(
            "--physical restores into a new data directory: --if-missing, --force and --terminate-connections do not apply".into(),
        ));
    }
    let to = std::path::PathBuf::from(args.to.as_deref().expect("clap requires --to"));
    let r = restore_to(settings, url, &which, &to).await?;
    Ok(Report {
        text: format!(
            "restored base {} to {} into {} in {:.1}s; its server runs on the socket there:\n  psql -h {} -p {} -U {} {}\nstop it with: {}\n",
            r.base,
            r.target,
            r.data_dir.display(),
            r.seconds,
            r.data_dir.display(),
            r.port,
            match url {
                migrator::DatabaseUrl::Postgres(pg) => pg.config.get_user().unwrap_or("postgres").to_string(),
                migrator::DatabaseUrl::Sqlite(_) => String::new(),
            },
            url.name(),
            r.stop_command
        ),
        json: serde_json::json!({ "restored": r }),
        code: Exit::Success,
    })
}

/// Asks on a terminal; without one, `--yes` is required.
fn confirm(yes: bool, question: &str) -> Result<(), Failure> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::new(
            Exit::Usage,
            "restore replaces the database: pass --yes to confirm (no terminal to ask on)",
        ));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    if matches!(line.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Failure::new(
            Exit::Usage,
            "not confirmed; nothing was restored",
        ))
    }
}

/// `restore --stream [--time T] [--to PATH]`: the stream's state (the newest, or the last read
/// by T) built, checked and put in place (or at PATH), as a snapshot is.
async fn stream(
    settings: &Settings,
    url: &migrator::DatabaseUrl,
    args: &RestoreArgs,
) -> Result<Report, Failure> {
    use crate::service::stream::Target;
    let target = time_of(args)?.map_or(Target::Newest, Target::Until);
    if args.to.is_none() {
        confirm(
            args.yes,
            &format!(
                "Restore the stream's state{} over {}?",
                args.time
                    .as_ref()
                    .map(|t| format!(" as of {t}"))
                    .unwrap_or_else(|| " (the newest)".into()),
                url.display()
            ),
        )?;
    }
    let restored = crate::service::stream::restore(
        settings,
        url,
        &target,
        args.to.as_deref(),
        args.force,
        false,
    )
    .await?
    .expect("without --if-missing a restore happens or fails");
    Ok(Report {
        text: format!(
            "restored the stream's state read at {} (generation {}, step {}) into {}{}\n",
            restored.stream.captured_at,
            restored.stream.generation,
            restored.stream.seq,
            restored.outcome.database,
            kept(&restored.outcome)
        ),
        json: json!({ "restored": restored }),
        code: Exit::Success,
    })
}

/// `--time`, parsed (RFC 3339).
fn time_of(args: &RestoreArgs) -> Result<Option<time::OffsetDateTime>, Failure> {
    let Some(t) = &args.time else {
        return Ok(None);
    };
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .map(Some)
        .map_err(|e| {
            Failure::new(
                Exit::Usage,
                format!("--time {t}: not an RFC 3339 time ({e}); e.g. 2026-11-26T09:30:00Z"),
            )
        })
}

/// `; the replaced database is kept as ...`, or nothing when nothing was replaced.
fn kept(outcome: &backup::restore::Outcome) -> String {
    outcome
        .replaced
        .as_ref()
        .map(|r| format!("; the replaced database is kept as {r}"))
        .unwrap_or_default()
}
