//! One module per command. Each returns a [`Report`] or a [`Failure`]; none prints on stdout.

mod backup;
mod baseline;
mod drill;
mod health;
mod lint;
mod migrate;
mod prune;
mod replicate;
mod report;
mod restore;
mod run;
mod schedule;
mod snapshots;
mod status;
mod wal;

use migrator::{DatabaseUrl, Dialect};

use crate::cli::{Cli, Command};
use crate::exit::Exit;
use crate::report::{Failure, Report};
use crate::settings::Settings;

pub fn name(command: &Command) -> &'static str {
    match command {
        Command::Migrate(_) => "migrate",
        Command::Status => "status",
        Command::Deploys => "deploys",
        Command::Baseline(_) => "baseline",
        Command::Lint => "lint",
        Command::Locked(_) => "locked",
        Command::Backup(_) => "backup",
        Command::Snapshots(_) => "snapshots",
        Command::Prune(_) => "prune",
        Command::Restore(_) => "restore",
        Command::Health(_) => "health",
        Command::Run(_) => "run",
        Command::RestoreDrill(_) => "restore-drill",
        Command::Schedule(_) => "schedule",
        Command::Report(_) => "report",
        Command::Replicate(_) => "replicate",
        Command::Generate(_) => "generate",
        Command::WalPush(_) => "wal-push",
        Command::WalFetch(_) => "wal-fetch",
        Command::Pitr(crate::cli::PitrCommand::Verify(_)) => "pitr verify",
    }
}

pub async fn run(cli: &Cli) -> Result<Report, Failure> {
    if let Command::Generate(args) = &cli.command {
        // Needs no settings: packaging runs it anywhere.
        if let (crate::cli::Asset::Man, Some(dir)) = (args.what, &args.dir) {
            let mut written = Vec::new();
            for (name, page) in crate::cli::man_pages() {
                let path = dir.join(&name);
                std::fs::write(&path, page).map_err(|e| {
                    Failure::new(Exit::Failed, format!("writing {}: {e}", path.display()))
                })?;
                written.push(name);
            }
            return Ok(Report {
                text: format!("{}\n", written.join("\n")),
                json: serde_json::json!({ "written": written }),
                code: Exit::Success,
            });
        }
        return Ok(Report {
            text: crate::cli::generate(args.what),
            json: serde_json::Value::Null,
            code: Exit::Success,
        });
    }
    if let Command::WalFetch(args) = &cli.command {
        // Loads its own settings: a failure to is not "not in the archive" (exit 1).
        return wal::fetch(&cli.global, args).await;
    }
    let mut all = Settings::load_all(&cli.global)?;
    if let Command::Report(args) = &cli.command {
        // Every database of every store configured: from the stores alone.
        return report::run(&all, args).await;
    }
    if all.len() > 1 {
        return several(&all, cli).await;
    }
    let settings = all.remove(0);
    match &cli.command {
        Command::Migrate(args) => migrate::run(&settings, args).await,
        Command::Status => status::run(&settings).await,
        Command::Deploys => deploys_list(&settings).await,
        Command::Baseline(args) => baseline::run(&settings, args).await,
        Command::Lint => lint::run(&settings),
        Command::Locked(args) => locked(&settings, args).await,
        Command::Backup(args) => backup::run(&settings, args).await,
        Command::Snapshots(args) => snapshots::run(&settings, args).await,
        Command::Prune(args) => prune::run(&settings, args).await,
        Command::Restore(args) => restore::run(&settings, args).await,
        Command::Health(args) => health::run(&settings, args).await,
        Command::Run(args) => run::run(&settings, args).await,
        Command::RestoreDrill(args) => drill::run(&settings, args).await,
        Command::Schedule(args) => schedule::run(std::slice::from_ref(&settings), args).await,
        Command::Replicate(args) => replicate::run(&settings, args).await,
        Command::WalPush(args) => wal::push(&settings, args).await,
        Command::Pitr(crate::cli::PitrCommand::Verify(args)) => wal::verify(&settings, args).await,
        Command::Generate(_) | Command::WalFetch(_) | Command::Report(_) => {
            unreachable!("answered above, before the settings")
        }
    }
}

/// `dbward locked -- CMD`: CMD under the migration lock, with its exit code as ours.
async fn locked(settings: &Settings, args: &crate::cli::LockedArgs) -> Result<Report, Failure> {
    let url = database_url(settings)?;
    let _db = migrator::Database::open_locked(
        &url,
        migrator::database::Open::Existing,
        args.lock_timeout,
    )
    .await?;
    let (program, rest) = args.cmd.split_first().expect("clap requires CMD");
    tracing::info!(
        "holding the migration lock of {}; running {}",
        url.display(),
        args.cmd.join(" ")
    );
    let mut c = crate::hooks::command(settings, program);
    c.args(rest);
    crate::hooks::foreground_if_terminal(&mut c);
    let mut child = c
        .spawn()
        .map_err(|e| Failure::new(Exit::Failed, format!("starting {program}: {e}")))?;
    // A stop request kills the job with everything it started (its own group's).
    let group = dbconn::child::Group::of(child.id());
    let status = child
        .wait()
        .await
        .map_err(|e| Failure::new(Exit::Failed, format!("waiting for {program}: {e}")))?;
    group.ended();
    let code = Exit::of_child(Some(status));
    Ok(Report {
        text: String::new(),
        json: serde_json::json!({ "command_exit_code": code.code() }),
        code,
    })
}

/// A command with several databases configured (`[[databases]]`, no `--db`): the ones that
/// are safe on all of them run on each in turn, one database's failure never stopping the
/// others (the first failure's exit code, every one logged); the others need `--db`.
async fn several(all: &[Settings], cli: &Cli) -> Result<Report, Failure> {
    if let Command::Schedule(args) = &cli.command {
        return schedule::run(all, args).await;
    }
    if let Command::RestoreDrill(args) = &cli.command {
        if args.metrics.is_some() || args.report.is_some() {
            return Err(Failure::new(
                Exit::Usage,
                "--metrics and --report name one file, and several databases are configured: each database's drill would write over the last one's. Give --db NAME, or set drill.metrics (each database then gets a file of its own)",
            ));
        }
    }
    let mut text = String::new();
    let mut docs = Vec::new();
    let mut code = Exit::Success;
    for settings in all {
        let db = settings.name.clone().unwrap_or_default();
        let result = match &cli.command {
            Command::Status => status::run(settings).await,
            Command::Snapshots(args) => snapshots::run(settings, args).await,
            Command::Backup(args) => backup::run(settings, args).await,
            Command::RestoreDrill(args) => drill::run(settings, args).await,
            // Before any database was touched: the first one is where this is decided.
            _ => {
                return Err(Failure::new(
                    Exit::Usage,
                    format!(
                        "several databases are configured ({}); `{}` acts on one: give --db NAME (or set DBWARD_DB). status, snapshots, backup, restore-drill and schedule act on all of them",
                        crate::settings::names(all),
                        name(&cli.command)
                    ),
                ))
            }
        };
        let (said, doc, this) = match result {
            Ok(r) => (r.text, r.json, r.code),
            Err(f) => {
                tracing::error!("{db}: {}", f.full());
                let doc = f.to_json(name(&cli.command));
                (format!("{}{}\n", f.text, f.message), doc, f.code)
            }
        };
        text.push_str(&format!("== {db} ==\n{said}"));
        docs.push(serde_json::json!({
            "database": db,
            "ok": this == Exit::Success,
            "exit_code": this.code(),
            "result": doc,
        }));
        if code == Exit::Success {
            code = this;
        }
    }
    Ok(Report {
        text,
        json: serde_json::json!({ "databases": docs }),
        code,
    })
}

/// `dbward deploys`: the deploy log, newest first.
async fn deploys_list(settings: &Settings) -> Result<Report, Failure> {
    let url = database_url(settings)?;
    let store = settings.store().await?;
    let scope = crate::state::Scope::of(&settings.state_dir, &url).await;
    let entries = crate::deploys::read(&scope, &store).await;
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.at.clone(),
                e.event.clone(),
                e.applied
                    .iter()
                    .map(|v| format!("V{v}"))
                    .collect::<Vec<_>>()
                    .join(","),
                format!("{}@{}", e.user, e.host),
                e.release.clone().unwrap_or_default(),
                short(&e.outcome),
                e.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    Ok(Report {
        text: table(
            &[
                "AT", "EVENT", "APPLIED", "BY", "RELEASE", "OUTCOME", "REASON",
            ],
            &rows,
        ),
        json: serde_json::json!({ "database": url.name(), "deploys": entries }),
        code: Exit::Success,
    })
}

/// A table cell of a long text (a failure's whole message): its first line, cut at 60
/// characters with `…`; `--json` keeps the whole text.
fn short(text: &str) -> String {
    let first = text.lines().next().unwrap_or_default();
    match first.char_indices().nth(60) {
        Some((at, _)) => format!("{}…", &first[..at]),
        None if text.lines().nth(1).is_some() => format!("{first} …"),
        None => first.to_string(),
    }
}

/// The database setting, parsed (exit 2 if missing or malformed).
fn database_url(settings: &Settings) -> Result<DatabaseUrl, Failure> {
    Ok(DatabaseUrl::parse(settings.database()?)?)
}

fn dialect(url: &DatabaseUrl) -> Dialect {
    match url {
        DatabaseUrl::Sqlite(_) => Dialect::Sqlite,
        DatabaseUrl::Postgres(_) => Dialect::Postgres,
    }
}

/// A fixed-width table for people; the JSON form carries the same rows.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}
