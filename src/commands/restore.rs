//! `dbward restore SNAPSHOT|latest|pre-deploy`: fetch and verify, restore beside the live
//! database, check, then swap it in; the replaced database is kept. Also the restore step of
//! the health guard.

use std::io::{BufRead, IsTerminal, Write};

use super::database_url;
use crate::cli::RestoreArgs;
use crate::report::{Exit, Failure, Report};
use crate::service::restore::{restore_if_missing, restore_snapshot, Options};
use crate::service::select::resolve;
use crate::settings::Settings;

pub async fn run(settings: &Settings, args: &RestoreArgs) -> Result<Report, Failure> {
    let url = database_url(settings)?;
    if args.if_missing {
        if args.snapshot != "latest" || args.to.is_some() {
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
    let (m, copies) = resolve(settings, &stores, &url, &args.snapshot).await?;
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
            restored
                .outcome
                .replaced
                .as_ref()
                .map(|r| format!("; the replaced database is kept as {r}"))
                .unwrap_or_default()
        ),
        json: serde_json::to_value(&restored).expect("serializes"),
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
